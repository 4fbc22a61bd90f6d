"""Rendering: artifacts -> images, plots and pages. Reads only artifacts, never recomputes."""
