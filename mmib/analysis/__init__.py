"""The paper's analyses as functions behind the `mmib` commands: ablations (`ablation`), the β sweep
(`beta_sweep`), contribution scores (`contribution`) and the modality gap (`modality_gap`).

`runs` starts `mmib train` runs for the first two, `intermediates` reads the model's X and Z tensors through
forward hooks for the last two, and `plotting` draws every figure (matplotlib, Agg backend).
"""
