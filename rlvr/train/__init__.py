"""Training: the algorithm-blind trainer and what feeds it.

- :mod:`rlvr.train.trainer`    ``Trainer``: old log-probs/entropy pass, train step on given token weights, save/load
- :mod:`rlvr.train.policy`     the HF causal LM with the chunked log-prob/entropy head
- :mod:`rlvr.train.parallel`   process groups and FSDP2 sharding, apart from the model
- :mod:`rlvr.train.batching`   samples -> micro-batches (packed or padded), planned per rank
- :mod:`rlvr.train.tiny_model` the CPU quickstart's tiny Qwen2 model and tokenizer, built from code
"""
