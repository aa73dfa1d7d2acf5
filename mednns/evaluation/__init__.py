"""Leave-one-dataset-out evaluation of mednns against baselines, and its report.

:mod:`.methods` names what is compared, :mod:`.settings` what the ``evaluate`` stage is asked
(conditions, variants), :mod:`.candidates` builds each method's starting network,
:mod:`.leave_one_out` runs the protocol, :mod:`.results` turns histories into mean ± std, gains and
epochs-to-match, :mod:`.statistics` pairs runs into gains with intervals and p-values,
:mod:`.report` renders figures, markdown and HTML.
"""
