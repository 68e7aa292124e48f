"""Building merged models: parameter-space merges (`ps`), source I/O (`sources`) and HF export (`export`)."""

from evosearch.merge.ps import PSMerger, build_merged_model, build_model, merge_state_dict
from evosearch.merge.sources import ResidentModel, SourceError, SourceModel, check_compatible

__all__ = ["PSMerger", "build_merged_model", "build_model", "merge_state_dict", "ResidentModel",
           "SourceError", "SourceModel", "check_compatible"]
