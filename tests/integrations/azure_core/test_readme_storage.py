"""The README's blocks that call Azure Storage run as written, against Azurite (over HTTPS,
checking each token) with a managed identity from the local emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mi_credential.emulator import Emulator
from tests._readme import BLOB_ACCOUNT, Block, blocks, run_block
from tests.conftest import register_emulator

from .conftest import Azurite

STORAGE_BLOCKS = [block for block in blocks() if "azurite" in block.spec]


def test_the_readme_has_a_storage_block() -> None:
    assert [block.heading for block in STORAGE_BLOCKS] == ["Usage"]
    assert all(BLOB_ACCOUNT in block.code for block in STORAGE_BLOCKS)


@pytest.fixture
async def real_time_emulator() -> AsyncIterator[Emulator]:
    """On the real clock: Azurite checks ``nbf`` and ``exp`` against its own."""
    async with Emulator() as emulator:
        register_emulator(emulator)
        yield emulator


@pytest.mark.parametrize("block", STORAGE_BLOCKS, ids=lambda block: block.id)
async def test_the_block_runs_against_azurite(
    block: Block, azurite: Azurite, real_time_emulator: Emulator, tmp_path: Path
) -> None:
    env = {**real_time_emulator.environ("app_service"), "SSL_CERT_FILE": azurite.ca_file}
    result = await run_block(
        block, tmp_path, env, block.code.replace(BLOB_ACCOUNT, azurite.account_url)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    assert len(real_time_emulator.requests) == 1  # one token, for every request of the block
    for secret in real_time_emulator.secrets():
        assert secret not in result.stdout
