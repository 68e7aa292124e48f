"""The merge engine: source models (`sources`), parameter-space merges (`ps`, with the method registry in
`methods`), data-flow-space merges (`dfs`, `dfs_model`) and the streaming export of either (`export`)."""

DEFAULT_MAX_SHARD_SIZE = "5GB"  # the largest safetensors file an export writes, as transformers' default
