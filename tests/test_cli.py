from fedtitan.cli import main


def test_devices_list_show_and_errors(capsys):
    assert main(["devices", "list"]) == 0
    out = capsys.readouterr().out
    assert "jetson-nano-10w" in out and "phone-midrange" in out
    assert main(["devices", "show", "orin-nano"]) == 0
    assert "[devices.orin-nano]" in capsys.readouterr().out
    assert main(["devices", "show", "orin-nan"]) == 2
    assert "did you mean 'orin-nano'" in capsys.readouterr().err


def test_devices_calibrate_writes_loadable_profile(tmp_path, capsys):
    out = tmp_path / "me.toml"
    assert main(["devices", "calibrate", "--model", "mlp", "--seconds", "0.3", "-o", str(out)]) == 0
    from fedtitan.devices import load_profiles

    prof = load_profiles(out)["this-machine"]
    assert prof.train_flops > 1e6 and prof.sources


def test_data_summary_with_heatmap(tmp_path, capsys):
    png = tmp_path / "h.png"
    assert main(["data", "summary", "digits", "--num-clients", "5", "--heatmap", str(png)]) == 0
    out = capsys.readouterr().out
    assert "class_9" in out and png.exists() and png.stat().st_size > 1000
    assert main(["data", "summary", "digits", "--partition", "dirichlet", "--alpha", "0"]) == 2
