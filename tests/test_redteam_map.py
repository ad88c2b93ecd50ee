"""bench/redteam.py re-runs issue 8's attacks and faults by test name: every name must exist."""
import subprocess
import sys

from conftest import ROOT


def test_every_redteam_item_points_at_tests_that_exist():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import redteam
    finally:
        sys.path.pop(0)
    nodes = redteam.node_ids()
    assert len(nodes) == len(set(nodes)) and {n for n, _, _ in redteam.ITEMS} >= {str(i) for i in range(1, 17)}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *nodes],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    collected = {line.split("[")[0] for line in done.stdout.splitlines() if "::" in line}
    assert collected == set(nodes)
