"""int8 passes over exported dirs: dynamic (CPU) and static QDQ with calibration on real text.

- passes.py: graph rewrites done before quantizing (the tied-embedding trap)
- calibration.py: calibration feeds from the packaged texts / labelled sets or a user's file
- int8.py: `quantize_dir`: quantize, measure the cost against the fp32 source, write (or refuse)
"""
