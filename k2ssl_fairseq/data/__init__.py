"""The data path: index, bucketing, reading, masking. Imports no model and no fairseq task."""
