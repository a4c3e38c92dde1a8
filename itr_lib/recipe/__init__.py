"""The strongest frozen-feature recipe (issue 15, notebook ``07_recipe``): levers measured one at a time against one
reference, chosen greedily on val, then the chosen recipe over seeds for the baseline and SelfAlign (LCA+CRA).

The reference is the capacity probe's best RSICD model (:mod:`itr_lib.probe`): the baseline at D = 1024 with residual-MLP
encoders (:data:`REFERENCE`), under the study loss (FN-masked InfoNCE, all captions per step), 6 epochs, the
checkpoint chosen on the full val split.

Levers (:data:`TRAIN_LEVERS`, :data:`INFERENCE_LEVERS`):

- **training levers** change the run's config (schedule, rotation sampling of the cached grids, InfoNCE
  temperature, region/token dropout); each lever is one run of seed 0, compared with the reference's seed-0 run.
  (Training on all 8 rotations + flips is left out: 8 RSICD train grids are 8 GB of RAM per run, too much for two
  runs side by side in 24 GB; flips enter at test time.)
  Levers that set the same fields are alternatives (a *group*; at most one of a group enters the recipe).
- **inference levers** change how a trained model scores (test-time augmentation over rotations, querybank
  normalisation with a bank of *training* items, a seed ensemble); they need no training.
- **adapted-backbone levers** (:mod:`itr_lib.recipe.adapt`, issue 28): EfficientNet-Lite2's top trained from cached
  activations, each alone on the chosen training recipe without rotations, against that recipe on the frozen grid. The transductive dual
  softmax (it reads the whole test query set) is measured and reported beside them, never chosen.

The rule (stated in the table and the README): a lever's gain is its val mR minus the reference's (seed 0). Training
levers with a positive gain are added greedily, best first (the best of each group only): each addition is a run of
the current recipe plus the lever, kept when its val mR beats the current recipe's. Then inference levers are added the
same way on the chosen training recipe's seed-0 model, with their own parameters (the querybank's beta) chosen on val.
Test numbers are reported beside every val number and are never used to choose.

Runs live in ``<results>/recipe/`` (:func:`itr_lib.runs.run_grid`: a recorded run is never retrained) and inference
records in ``<results>/recipe/inference/`` (metrics JSON + per-query tie counts, so tables and paired bootstraps are
rebuilt without checkpoints). The chosen recipe's per-query latency is timed under 04's protocol
(:mod:`itr_lib.recipe.latency`, cached in ``<results>/recipe/latency/``) and drawn on 04's accuracy / latency frontier.
"""
from .adapt import (ADAPT_LEVERS, FROZEN, adapt_configs, adapt_final_plan, adapt_levers, adapt_plan, adapt_greedy, adapt_lr, adapted_final, mark_chosen,
                    operating_point, operating_points, point_gains, without_rotations)
from .latency import combine_cost, frontier_rows, measure_recipe
from .inference import (STALE_BETA, SpecResult, check_stale_beta, checkpoints, evaluate_spec, prepare_vectors,
                        save_spec, score_spec)
from .levers import (BETAS, D4, INFERENCE_LEVERS, REFERENCE, ROT4, TRAIN_LEVERS, TRANSDUCTIVE_LEVERS, GreedyTrace,
                     InferenceSpec, best_per_group, combine, ensure_caches, greedy_train, lever_config, lever_names,
                     needed_transforms, recipe_dir, test_mr, unrecorded, val_mr)
from .records import lever_table, load_spec_hits, read_record, trace_table, write_record
from .stages import final_runs, inference_levers, main_rows, recipe_configs, training_levers

__all__ = ["ADAPT_LEVERS", "FROZEN", "adapt_configs", "adapt_final_plan", "adapt_levers", "adapt_plan", "adapt_greedy", "adapt_lr", "adapted_final", "mark_chosen",
           "operating_point", "operating_points", "point_gains", "without_rotations", "BETAS", "STALE_BETA", "check_stale_beta", "D4", "INFERENCE_LEVERS", "REFERENCE", "ROT4", "TRAIN_LEVERS", "TRANSDUCTIVE_LEVERS", "GreedyTrace",
           "InferenceSpec", "SpecResult", "best_per_group", "checkpoints", "combine", "combine_cost", "ensure_caches", "evaluate_spec",
           "final_runs", "frontier_rows", "greedy_train", "inference_levers", "lever_config", "lever_names", "lever_table",
           "load_spec_hits", "main_rows", "measure_recipe", "needed_transforms", "prepare_vectors", "read_record", "recipe_configs",
           "recipe_dir", "save_spec", "score_spec", "test_mr", "trace_table", "training_levers", "unrecorded", "val_mr",
           "write_record"]
