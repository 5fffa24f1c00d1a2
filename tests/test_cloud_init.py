"""deploy/cloud-init: the first-boot seed is valid cloud-config, checked by cloud-init itself.

Runs `cloud-init schema` (apt cloud-init, which .ci/run installs; without it the test fails
with the install hint, it does not skip) on the template as shipped and as IT staff fill it in.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML, with ansible-core

SEED = Path(__file__).resolve().parent.parent / "deploy" / "cloud-init"


def schema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.fail("cloud-init missing: apt-get install cloud-init", pytrace=False)
    return subprocess.run(
        [tool, "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_user_data_is_valid_cloud_config_as_shipped_and_filled_in(tmp_path):
    shipped = schema(SEED / "user-data")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    filled = tmp_path / "user-data"
    filled.write_text((SEED / "user-data").read_text().replace("GATEWAY_ID", "gw-042"))
    result = schema(filled)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_the_schema_check_catches_a_mistake(tmp_path):
    # The check above is only worth something if a broken seed makes cloud-init speak.
    broken = tmp_path / "user-data"
    broken.write_text(
        (SEED / "user-data").read_text().replace("ssh_pwauth: false", "ssh_pwauth: [no]")
    )
    result = schema(broken)
    assert result.returncode != 0
    assert "ssh_pwauth" in result.stdout + result.stderr


def test_meta_data_names_the_instance_per_card():
    meta = yaml.safe_load((SEED / "meta-data").read_text())
    assert meta["instance-id"] == meta["instance_id"] == "GATEWAY_ID"
    assert meta["dsmode"] == "local"
