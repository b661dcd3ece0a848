"""Pictures: heatmaps, overlays, the overview and the show command (numpy, OpenCV, matplotlib)."""
