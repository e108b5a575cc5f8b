"""Column samplers for :class:`recipe.stages.io.sample.SampleStage`: declared distributions drawn with numpy.

Every value is a function of ``(seed, column, record key, attempt)`` only (:mod:`.keyed`), so a
record's values never depend on the partitioning, the workers, a crash or a rerun.
"""
