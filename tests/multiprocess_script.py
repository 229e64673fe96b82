"""examples/multiprocess_training.py as a process of tests/test_multiprocess.py.

    python tests/multiprocess_script.py [the example's arguments]

It prints where fit started from ("started" or "resumed from step N"),
read from fit's own restore, then runs the example's main.
"""

import os
import sys


def main(argv):
    from lamina._src.train import resume

    restore = resume.Checkpoints.resume

    def reporting(self, run, resume_flag):
        restored = restore(self, run, resume_flag)
        print("started" if restored is run else f"resumed from step {restored.step}", flush=True)
        return restored

    resume.Checkpoints.resume = reporting
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "examples"))
    import multiprocess_training

    return multiprocess_training.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
