"""
Inference Endpoints: every NER and RE checkpoint that `mmib train` saves carries `handler.py` (the source of
`mmib/handler.py`, see its docstring) and the code it runs, so that a checkpoint pushed to the Hub deploys as a
custom-handler endpoint as it is, on a machine without `mmib`.
"""

import os
import shutil
from pathlib import Path

from transformers.dynamic_module_utils import custom_object_save

from .. import handler
from ..predictor_mmib import MMIBPredictor

__all__ = ["HANDLER_FILE", "save_endpoint_handler"]

HANDLER_FILE = "handler.py"


def save_endpoint_handler(save_directory: str | os.PathLike) -> list[Path]:
    """
    Copies `handler.py` into a checkpoint folder, with the predictor's file and the files it imports (an RE
    checkpoint's model and processor do not import the predictor, so `save_pretrained` alone would leave it out).

    Returns:
        `list[Path]`: the files written.
    """
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    written = [Path(path) for path in custom_object_save(MMIBPredictor, save_directory)]
    shutil.copyfile(handler.__file__, save_directory / HANDLER_FILE)
    return [*written, save_directory / HANDLER_FILE]
