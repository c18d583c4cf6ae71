"""A stored study, read below the search: its storage URL (:mod:`~nas_asc.study.storage`) and
its Pareto front (:mod:`~nas_asc.study.front`). The search, the report and the exports import
these modules; these modules import none of them."""
