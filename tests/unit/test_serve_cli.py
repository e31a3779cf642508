"""`semipd serve` argument handling, without starting a server (--dry-run and early errors)."""

import subprocess
import sys

SEMIPD = [sys.executable, "-m", "cli.main", "serve"]


def serve(*args):
    return subprocess.run([*SEMIPD, *args], capture_output=True, text=True, timeout=120)


def test_dry_run_fills_safe_defaults_and_user_flags_win(tiny_model):
    out = serve("--model", str(tiny_model), "--dry-run").stdout.split()
    assert out[out.index("--max-total-tokens") + 1].isdigit()
    assert "--enable-metrics" in out and out[out.index("--dtype") + 1] == "bfloat16"
    mine = serve("--model", str(tiny_model), "--dry-run", "--max-total-tokens", "999", "--dtype", "float32").stdout.split()
    assert mine.count("--max-total-tokens") == 1 and mine[mine.index("--max-total-tokens") + 1] == "999"
    assert mine.count("--dtype") == 1 and mine[mine.index("--dtype") + 1] == "float32"


def test_semipd_mode_adds_what_it_needs(tiny_model):
    out = serve("--model", str(tiny_model), "--mode", "semi-pd", "--dry-run").stdout.split()
    assert "--disable-overlap-schedule" in out


def test_bad_split_and_bad_model_fail_before_starting(tmp_path):
    bad = serve("--mode", "semi-pd", "--split", "9,1", "--dry-run")
    assert bad.returncode == 2 and "prefill share 9 is out of range" in bad.stderr and "from 1 to" in bad.stderr
    garbled = serve("--mode", "semi-pd", "--split", "one,two", "--dry-run")
    assert garbled.returncode == 2 and "not two integers" in garbled.stderr
    missing = serve("--model", str(tmp_path), "--dry-run")
    assert missing.returncode == 2 and "not a model folder" in missing.stderr
    deep = serve("--mode", "semi-pd", "--prefill-pipeline", "3", "--dry-run")
    assert deep.returncode == 2 and "--prefill-pipeline" in deep.stderr and "choose from 1, 2" in deep.stderr


def test_beyond_loopback_the_engine_needs_an_admin_key(tiny_model):
    import os

    open_to_all = serve("--model", str(tiny_model), "--host", "0.0.0.0", "--dry-run")
    assert open_to_all.returncode == 2 and "SEMIPD_ADMIN_KEY" in open_to_all.stderr, open_to_all.stderr
    keyed = subprocess.run([*SEMIPD, "--model", str(tiny_model), "--host", "0.0.0.0", "--dry-run"],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "SEMIPD_ADMIN_KEY": "k3y-from-env"})
    out = keyed.stdout.split()
    assert keyed.returncode == 0 and out[out.index("--admin-api-key") + 1] == "***"  # given, and not printed
    assert "k3y-from-env" not in keyed.stdout
    flagged = serve("--model", str(tiny_model), "--host", "0.0.0.0", "--admin-api-key=abc", "--dry-run")
    assert flagged.returncode == 0 and "--admin-api-key=***" in flagged.stdout.split()
