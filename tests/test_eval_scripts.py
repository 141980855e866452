import csv
import subprocess
import sys

from conftest import REPO


def test_norm_speed_runs_in_quick_mode_and_writes_csv(tmp_path):
    out = tmp_path / "speed.csv"
    result = subprocess.run([sys.executable, "eval/norm_speed.py", "--quick", "--csv", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    layers = {r["layer"] for r in rows}
    assert {"ilm", "ilm (original)", "l1bn", "l1bn (original)", "linfbn", "topkbn"} <= layers
    assert all(float(r["ms"]) > 0 and float(r["ratio"]) > 0 for r in rows)
    assert {r["baseline"] for r in rows if r["layer"].startswith("ilm")} == {"gn", "in", "ln"}
    table = [line for line in result.stdout.splitlines() if line.startswith("| (")]
    assert len(table) == len(rows)


def test_norm_speed_rejects_unknown_norms():
    result = subprocess.run([sys.executable, "eval/norm_speed.py", "--quick", "--norms", "mimic"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "not per-layer norms: mimic" in result.stderr


def test_train_speed_compares_the_two_loops(data_root):
    result = subprocess.run([sys.executable, "eval/train_speed.py", "--steps", "2", "--repeats", "1",
                             "-b", "32", "--data", str(data_root / "cifar10")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines()[1:])
    seed = float(lines["seed-style loop"].split()[0])
    fast = float(lines["trainer loop"].split()[0])
    assert seed > 0 and fast > 0
    assert abs(float(lines["ratio"].strip().rstrip("x")) / (fast / seed) - 1) < 0.05  # rounding
