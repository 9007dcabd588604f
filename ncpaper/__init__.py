"""ncpaper: an executable edition of Rangamani & Banburski, "Neural Collapse in Deep Homogeneous
Classifiers and the Role of Weight Decay" (ICASSP 2022)."""

__version__ = "0.3.0"
