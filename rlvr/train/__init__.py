"""Training: the algorithm-blind trainer and what feeds it.

- :mod:`rlvr.train.engines`    ``TRAINER_ENGINES``: ``trainer.engine`` -> the class (``fsdp2``, ``deepspeed``)
- :mod:`rlvr.train.trainer`    ``Trainer`` (FSDP2): old log-probs/entropy pass, train step on given token weights, save/load
- :mod:`rlvr.train.deepspeed_trainer` the same interface over DeepSpeed ZeRO-1/2/3 (optimizer offload)
- :mod:`rlvr.train.policy`     the HF causal LM with the chunked log-prob/entropy head
- :mod:`rlvr.train.parallel`   process groups and FSDP2 sharding, apart from the model
- :mod:`rlvr.train.batching`   samples -> micro-batches (packed or padded), planned per rank
- :mod:`rlvr.train.tiny_model` the CPU quickstart's tiny Qwen2 model and tokenizer, built from code
"""
