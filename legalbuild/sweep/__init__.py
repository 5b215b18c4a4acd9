"""`legalbuild sweep`: a search over recipe settings (learning rate, weight decay, LoRA rank, any
curate or train key) on top of the stage cache, with Optuna choosing the values.

    sweep file (spec)  ─► checks (before any trial) ─► study (Optuna: journal file or PostgreSQL)
        runner: ask ─► trial process (`python -m legalbuild.sweep.trial`: one build of the base
                 recipe with the trial's overrides, on the shared cache) ─► events ─► report/prune
                 ─► tell (objective from the trial's eval.json on the validation split)
        winner: the base recipe with the best trial's values, its own [eval] (the test split)
    apply: the winner's (or any trial's) values written into the recipe; report: HTML + PNG + JSON

Modules: spec (the sweep file), overrides (dotted keys into recipe text), checks (every refusal
before a trial runs), study (storage, recovery of interrupted trials), trial (the trial process),
running (one trial process seen from the sweep), runner (the loop), progress (the terminal),
apply, report and plots. Optuna is imported inside functions: `--help` stays light.
"""
