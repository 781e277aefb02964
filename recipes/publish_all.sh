#!/usr/bin/env bash
# Publish the runs behind checkpoints/ (re-running this regenerates every folder, card and the manifest).
#   bash recipes/publish_all.sh synthetic|cwru|dsb|cifar
set -euo pipefail
export PYTHONPATH=${PYTHONPATH:-.} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
pub() { python recipes/publish.py "$@" > /dev/null; }
case ${1:?usage: publish_all.sh synthetic|cwru|dsb|cifar} in
  synthetic)
    for task in circles-d2 moons-d2 spheres-d10 spheres-d50 interaction-d2; do
      for m in mlp qmlp; do for h in 2 4 8 16 32; do
        pub runs/synthetic/$task/$m-h$h-s0 --tag h$h-synthetic-$task-s0
      done; done
    done
    pub --set-default mlp.h8-synthetic-circles-d2-s0
    pub --set-default qmlp.h2-synthetic-circles-d2-s0 ;;
  cwru)
    for cond in snr-6db clean; do for s in 0 1 2; do
      for w in 4 8 16; do pub runs/cwru/wdcnn-w$w-cwru-$cond-s$s --tag w$w-cwru-$cond-s$s; done
      for w in 8 16 32; do pub runs/cwru/qcnn-w$w-cwru-$cond-s$s --tag w$w-cwru-$cond-s$s; done
    done; done
    pub --set-default wdcnn.w16-cwru-snr-6db-s0
    pub --set-default qcnn.w16-cwru-snr-6db-s0 ;;
  dsb)
    for w in 4 8 16; do
      pub runs/dsb2018-96/unet-b$w-dsb2018-96-s0 --tag b$w-dsb2018-96-s0
      pub runs/dsb2018-96/qunet-b$w-dsb2018-96-s0 --tag b$w-dsb2018-96-s0
    done
    pub --set-default unet.b16-dsb2018-96-s0
    pub --set-default qunet.b16-dsb2018-96-s0 ;;
  cifar)  # the conventional batch of 2026-11-27 (H100; launch.py --fit-in cut the recipe's 50 epochs to 40)
    for d in 20 32 44 56; do pub runs/conventional/resnet$d-cifar10-jpeg75-s0 --tag cifar10-jpeg75-e40-s0; done
    for w in 8 12 24; do pub runs/conventional/resnet20-w$w-cifar10-jpeg75-s0 --tag w$w-cifar10-jpeg75-e40-s0; done
    pub --set-default resnet20.cifar10-jpeg75-e40-s0 ;;
esac
