"""Where model inputs come from: decoding any photo file (:mod:`.decode`) and the sources a
:class:`~ilgnet_cli.predict.Predictor` reads items from (:mod:`.source`). The folders ``means/``
and ``lists/`` beside this file hold the authors' mean images and partition lists.
"""
