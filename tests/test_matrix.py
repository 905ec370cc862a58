"""The named subset of the tox matrix (tox.ini) that CI runs with the main suite, in this process
instead of one virtualenv per cell. Together the cells cover every adapt plugin, every harden
plugin, four of the five combine plugins and a fuse plugin; the known-incompatible combinations
fail with their one-line error. The full matrix, and the environments that need a separate
installation (distill, broken, newplugin), run with `tox` (README, "The matrix")."""

from __future__ import annotations

import pytest

from tests.combinations import cell_files, check_cell
from tests.combinations import test_known_incompatible_combinations_fail_clearly  # noqa: F401 (collected here)

CI_CELLS = ["adapter-pgd-bagging", "probe-fgsm-soup", "full-freelb-stacking", "adapter-none-boosting",
            "attention-adapter"]


@pytest.mark.parametrize("cell", CI_CELLS)
def test_matrix_cell(cell, ner_files, tiny_model, tmp_path, capsys):
    check_cell(cell, cell_files(cell, ner_files, tmp_path / "data"), tiny_model, tmp_path, capsys)
