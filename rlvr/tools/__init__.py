"""Tools over runs and checkpoints: ``rlvr eval``'s loop and pass@k, ``rlvr report``'s plots.

- :mod:`rlvr.tools.evaluate` the evaluation loop and its generation over the rollout pool
- :mod:`rlvr.tools.passk`    pass@k / mean@k
- :mod:`rlvr.tools.report`   plots and HTML of one or more run directories
"""
