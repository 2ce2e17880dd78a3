"""The wheel carries the built-in modules, so an installed station finds them by name."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from helpers import ROOT


def test_wheel_contains_builtin_modules_and_finds_them(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("chargepoint-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "chargepoint/_builtin/modules/token_manual/manifest.yaml" in names
    assert "chargepoint/_builtin/modules/token_manual/__init__.py" in names
    assert "chargepoint/interfaces/evse.yaml" in names
    assert not any(name.startswith("tests/") for name in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    listing = subprocess.run(
        [sys.executable, "-c", "import sys; from chargepoint.cli import main; sys.exit(main(['modules']))"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert f"token_manual  (builtin: {site}/chargepoint/_builtin/modules/token_manual)" in listing.stdout


def test_third_party_module_found_through_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    package = site / "acme_meter"
    package.mkdir(parents=True)
    (package / "manifest.yaml").write_text("description: A vendor's meter.\nprovides:\n  meter: powermeter\n")
    (package / "__init__.py").write_text(
        "from chargepoint import Module\n\n\nclass AcmeMeter(Module):\n    pass\n"
    )
    dist = site / "acme_meter-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-meter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[chargepoint.modules]\nacme_meter = acme_meter\n")
    code = (
        "from chargepoint.registry import ModuleRegistry, load_module_class\n"
        "info = ModuleRegistry().find('acme_meter')\n"
        "print(info.origin, info.manifest.provides, load_module_class(info).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": f"{site}:{ROOT}"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "entry_point {'meter': 'powermeter'} AcmeMeter"
