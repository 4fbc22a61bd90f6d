"""Analyses: pure computations on a model and recorded evidence. They never write HTML."""
