"""Pretrained weights: placeholder until the hub module lands."""


def pretrained_overlay(variant, pretrained_cfg, overlay, cache_dir):
    raise RuntimeError(f'no pretrained weights are published for {variant!r} yet; use pretrained=False')


def finish_pretrained(model):
    pass
