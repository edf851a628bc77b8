"""``TrialsDataset``: a VoxCeleb trial list (``label enrol test`` per line) as a DataFrame."""

from __future__ import annotations

from itertools import islice

import pandas as pd
from kedro.io.core import (
    DatasetError,
    get_filepath_str,
)

from sv_kedro.datasets.file_dataset import VersionedFileDataset
from sv_kedro.datasets.previews import TablePreview, dataframe_table_preview
from sv_kedro.scoring.trial_list import (
    format_trial_lines,
    parse_trial_lines,
    read_trial_list,
    write_trial_list,
)


class TrialsDataset(VersionedFileDataset[pd.DataFrame, pd.DataFrame]):
    """Load/save trials as DataFrame[``label`` (Int8, may be NA), ``enrol``, ``test``].

    Catalog example::

        voxceleb1_o_trials:
          type: sv_kedro.datasets.TrialsDataset
          filepath: data/01_raw/voxceleb1/veri_test2.txt

    Parse errors name the file and line (``veri_test2.txt:17: ...``). Unlabelled lists
    (``enrol test``) load with an all-NA ``label`` column and save without it.
    """

    def load(self) -> pd.DataFrame:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        if self._protocol == "file":
            return read_trial_list(path)
        if not self._fs.exists(path):
            raise DatasetError(f"{path}: trial list not found")
        with self._fs.open(path, "r", encoding="utf-8-sig") as handle:
            return parse_trial_lines(handle, source=path)

    def save(self, data: pd.DataFrame) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        if not isinstance(data, pd.DataFrame):
            raise DatasetError(
                f"{path}: TrialsDataset saves a DataFrame, got {type(data).__name__}"
            )
        if self._protocol == "file":
            write_trial_list(data, path)
        else:
            text = "\n".join(format_trial_lines(data, target=path)) + "\n"
            with self._fs.open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        self._invalidate_cache()

    def preview(self, nrows: int = 10) -> TablePreview:
        """The first ``nrows`` trials (only those lines are read)."""
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, "r", encoding="utf-8-sig") as handle:
            head = parse_trial_lines(islice(handle, nrows), source=path)
        return dataframe_table_preview(head, nrows)
