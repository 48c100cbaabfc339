"""Train and evaluate MMIB from a source checkout: the same as `mmib train` (see `mmib.training.run`)."""

from mmib.training.run import main

if __name__ == "__main__":
    main(prog="python train_mmib.py")
