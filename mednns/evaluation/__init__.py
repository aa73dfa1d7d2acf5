"""Leave-one-dataset-out evaluation of mednns against baselines, and its report.

:mod:`.methods` names what is compared, :mod:`.candidates` builds each method's starting network,
:mod:`.leave_one_out` runs the protocol (the ``evaluate`` stage), :mod:`.results` turns histories
into mean ± std, gains and epochs-to-match, :mod:`.report` renders figures, markdown and HTML.
"""
