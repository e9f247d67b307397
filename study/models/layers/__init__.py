"""The Keras building blocks of the model families: the attention scorers (`attention`), the RNN
encoder-decoder (`seq2seq.Seq2Seq`) and the Transformer (`transformer.Transformer`).

These modules import Keras, so the registry never imports them to list names: a family file
(`study/models/*.py`) imports them inside its builder and its `keras_classes`.
"""
