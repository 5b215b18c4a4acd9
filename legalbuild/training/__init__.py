"""Helpers of the train stage: monitoring (overfitting, plots), trackers and Trainer callbacks.

This package is imported only from inside `legalbuild.stages.train.run`, at training time, so its
modules may import transformers at their top (the stage module itself stays light for the graph).
"""
