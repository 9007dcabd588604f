# Sourced by the other scripts: use NCPAPER_DATA if set, else the shared copies beside the checkout
# (this project's machines and CI), else ./data (torchvision downloads there).
if [ -z "${NCPAPER_DATA:-}" ]; then
  if [ -d ../shared/data/MNIST ]; then export NCPAPER_DATA=../shared/data; else export NCPAPER_DATA=data; fi
fi
