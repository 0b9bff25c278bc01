"""The fault matrix's fast half (``benchmarks/faults.py --fast``): every command against the faults
that need no training run, each ending in a finished run or one error line with no file of the
user's changed. A cell this machine cannot run (no root for a tmpfs) is skipped with its reason."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_fast_half_of_the_fault_matrix_finds_no_defect(tmp_path):
    out = tmp_path / "faults.json"
    args = ["--fast", "--jobs", "2", "--allow-dirty", "--out", str(out)]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), *args], capture_output=True, text=True,
                       timeout=900, cwd=ROOT, check=False)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    broken = [f"{c['command']} × {c['fault']}: {c['verdict']}: {c['note']}" for c in result["cells"]
              if c["verdict"] not in ("ok", "skipped")]
    assert not broken, "\n".join(broken)
    assert result["counts"]["ok"] >= len(result["cells"]) // 2, r.stdout[-3000:]  # skips are the exception
