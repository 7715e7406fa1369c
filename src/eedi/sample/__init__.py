"""The procedural sample data set (``data/sample``): Kaggle-schema questions whose distractors follow rules.

:mod:`eedi.sample.build` explains how it is made; ``eedi make-sample`` writes it. Not part of the Kaggle wheel.
"""
