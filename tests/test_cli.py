"""Command-line values reach MONAI's ConfigParser as data, and the entry points report bad input in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from utils import TINY_BUNDLE_IMG_SIZE, TINY_BUNDLE_NET, save_tiny_model
from dlka_monai.cli import literal, one_line_errors
from dlka_monai.convert import main as convert_main
from dlka_monai.data.demo import main as demo_main
from dlka_monai.export import main as export_main

ROOT = Path(__file__).parents[1]


def _attack(marker: Path) -> str:
    return f'$__import__("os").system("touch {marker}")'


def test_literal_values_pass_a_config_parser_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    values = [
        '$__import__("os").system("touch PWNED")',
        _attack(marker),
        "@x",
        "%y",
        "$@x",
        "a @x in the middle",
        "$'@x'",  # a reference inside quotes of an expression is still resolved
        "%#y",
        "@#x",
        "scan#3.nii.gz",  # the parser rewrites "#" to its id separator "::"
        "100%",
        "",
        "plain/path/ct.nii.gz",
        "quotes ' \" and unicode é ✓",
        ["@x", "%y", "plain", 3, None],
        {"a": "@x", "b": ["%y", 1.5, True]},
        {"_target_": "os.system", "command": f"touch {marker}"},  # would be instantiated
        {"a#b": "@x", "c::d": 1},
    ]
    config = {"x": "X", "y": "Y", "values": [literal(v) for v in values], "nested": {"deep": literal(values[0])}}
    parser = ConfigParser(config)
    parsed = parser.get_parsed_content("values")
    for value, got in zip(values, parsed):
        assert got == (list(value) if isinstance(value, tuple) else value), value
    assert parser.get_parsed_content("nested::deep") == values[0]
    # the same values, not literal: the parser runs, resolves and rewrites them
    raw = ConfigParser({"x": "X", "y": "Y", "values": values[2:5] + values[9:10]}).get_parsed_content("values")
    assert raw[:3] == ["X", "Y", "X"] and raw[3] == "scan::3.nii.gz"
    assert not marker.exists() and not (tmp_path / "PWNED").exists()


def test_literal_leaves_plain_values_alone():
    for value in ["ct.nii.gz", "/data/Synapse", "C:\\data\\x y", "a::b", 3, 0.5, True, None]:
        assert literal(value) == value
    assert literal(Path("/data/ct.nii.gz")) == "/data/ct.nii.gz"
    assert ConfigParser({"p": literal(Path("/data/scan#2"))}).get_parsed_content("p") == "/data/scan#2"
    assert literal(("a", "@b"))[0] == "a" and literal(("a", "@b"))[1].startswith("$bytes.fromhex('40")
    with pytest.raises(TypeError, match="command-line values"):
        literal(object())


def test_one_line_errors(capsys):
    @one_line_errors("prog")
    def main(argv=None):
        if argv == ["bad"]:
            raise ValueError("bad: not a number.")
        if argv == ["missing"]:
            open("/nonexistent/x")
        if argv == ["bug"]:
            raise KeyError("a bug keeps its traceback")
        return None if argv is None else 3

    assert main() == 0 and main(["ok"]) == 3
    assert main(["bad"]) == 1 and capsys.readouterr().err == "prog: error: bad: not a number.\n"
    assert main(["missing"]) == 1
    assert capsys.readouterr().err == "prog: error: [Errno 2] No such file or directory: '/nonexistent/x'\n"
    with pytest.raises(KeyError):
        main(["bug"])


@pytest.mark.parametrize(
    "main,argv,message",
    [
        (demo_main, ["--out", "d", "--num-cases", "abc"], "python -m dlka_monai.data.demo: error: argument --num-cases: invalid int value: 'abc'"),
        (convert_main, ["--variant", "dlka3d_synapse", "in.model"], "python -m dlka_monai.convert: error: the following arguments are required: dst"),
        (export_main, ["onnx", "--opset", "x"], "python -m dlka_monai.export onnx: error: argument --opset: invalid int value: 'x'"),
    ],
    ids=["demo", "convert", "export"],
)
def test_malformed_arguments_are_one_line(main, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    prog = message.split(": error:")[0]
    assert capsys.readouterr().err == f"{message} (see {prog} --help)\n"


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, encoding="utf-8", errors="replace", cwd=cwd, timeout=600)


@pytest.mark.slow
def test_demo_cli_reports_bad_arguments_in_one_line(tmp_path):
    proc = _run("dlka_monai.data.demo", "--out", str(tmp_path / "d"), "--num-cases", "2")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "python -m dlka_monai.data.demo: error: num_cases must be at least 3, got 2.\n"
    (tmp_path / "file").write_text("not a folder")
    proc = _run("dlka_monai.data.demo", "--out", str(tmp_path / "file"), "--num-cases", "3")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("python -m dlka_monai.data.demo: error: ") and str(tmp_path / "file") in proc.stderr


@pytest.mark.slow
def test_convert_cli_reports_a_missing_file_in_one_line(tmp_path):
    proc = _run("dlka_monai.convert", "--variant", "dlka3d_synapse", str(tmp_path / "none.model"), str(tmp_path / "out.pt"))
    assert proc.returncode == 1
    assert proc.stderr == f"python -m dlka_monai.convert: error: {tmp_path / 'none.model'}: no such checkpoint file.\n"


@pytest.fixture
def tiny_config(tmp_path):
    """A config whose network_def reads bundle_root: an expression in it would run while the net is built."""
    network_def = {"_target_": "dlka_monai.networks.create_network", "name": "dlka3d_synapse", "img_size": TINY_BUNDLE_IMG_SIZE}
    network_def.update(TINY_BUNDLE_NET, out_channels="$14 + len(@bundle_root) * 0")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"bundle_root": ".", "network_def": network_def}))
    return path


def test_export_takes_bundle_root_literally_and_reports_in_one_line(tiny_config, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(2)}, other)
    args = ["onnx", "--config_file", str(tiny_config), "--filepath", str(tmp_path / "m.onnx")]
    assert export_main([*args, "--ckpt_file", str(other), "--bundle_root", _attack(marker)]) == 1
    err = capsys.readouterr().err
    assert not marker.exists()  # the network was built with the value as a string, and nothing ran
    assert len(err.splitlines()) == 1
    # a state dict without a plan that fits no preset: refused in one line saying what it holds
    assert err.startswith(f"python -m dlka_monai.export: error: {other}: a state dict of 1 tensors") and "fits no preset" in err
    assert export_main([*args, "--ckpt_file", str(tmp_path / "none.pt")]) == 1
    assert capsys.readouterr().err == f"python -m dlka_monai.export: error: {tmp_path / 'none.pt'}: no such checkpoint file.\n"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"network_def": {"_target_": "dlka_monai.networks.create_network", "name": "nope"}}))
    good = tmp_path / "good.pt"
    save_tiny_model(good)
    assert export_main(["onnx", "--config_file", str(bad), "--ckpt_file", str(good)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"python -m dlka_monai.export: error: {bad}: cannot build network_def: ")
