"""Print the lower bound of every dependency in pyproject.toml as a pip constraint (`name==floor`).

CI installs the package against this file to prove the floors we declare work:
    python dev/floors.py > floors.txt && pip install -c floors.txt -e ".[test]"
Extras that CI never installs (gpu, vllm, bench) are left out; so are requirements without a `>=` bound.
Requirements here carry no environment markers (this script would not evaluate them).
"""

import re
import sys
import tomllib
from pathlib import Path

CHECKED_EXTRAS = ("test",)


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in CHECKED_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    pins = {}
    for line in requirements:  # `name[extras]>=x,<y  # comment`: stdlib only, so a bare venv can run this
        name = re.match(r"[A-Za-z0-9_.-]+", line).group(0)
        lower = re.search(r">=\s*([^,;\s]+)", line)
        if lower:
            pins[name.lower()] = lower.group(1)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    print("\n".join(floors(root / "pyproject.toml")))
