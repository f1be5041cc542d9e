"""The tiny shapes model: a Wan2.1 trained here, on synthetic clips of coloured shapes, so that the default
model draws what it is told. Data, tokenizer, training recipe, evaluation and model card; the weights ship
in ``worker/models``."""
