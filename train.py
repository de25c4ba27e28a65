"""Trains the model a config describes, resuming from the latest good checkpoint in --workdir.

    python train.py [--config configs/x.py] [--workdir DIR] [--config.train.num_steps=...]
    python train.py --dry_run [--config.mesh.data=64]   # compile for the mesh, print memory and FLOPs

Exit status: 0 done, 2 a user error (one line on stderr), 3 pre-empted (resume with the same command).
"""
from absl import app, flags

from bilateral_jax import cli, parallel, trainer

flags.DEFINE_bool("fresh_optimizer", False, "Resume the checkpoint's parameters with a new optimiser state "
                  "(after changing an optimizer option that changes its structure, e.g. clip_norm 0 <-> > 0).")
flags.DEFINE_bool("dry_run", False, "Compile the train step for the configured mesh and print parameters, "
                  "memory and FLOPs, then exit. With mesh.data set (not -1) it compiles on data x fsdp CPU "
                  "devices, so a pod's mesh can be checked on any machine (memory is then the CPU compiler's).")
flags.adopt_module_key_flags(cli)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = cli.FLAGS.config
  mesh = config.mesh
  host_devices = parallel.devices_for_dry_run(mesh.data, mesh.fsdp) if cli.FLAGS.dry_run else 0
  workdir = cli.set_up(host_devices)
  final = trainer.train_and_evaluate(config, workdir, fresh_optimizer=cli.FLAGS.fresh_optimizer,
                                     dry_run=cli.FLAGS.dry_run)
  for split, metrics in final.items():
    print(f"{split}: " + "  ".join(f"{k} {cli.number(v)}" for k, v in metrics.items()))


if __name__ == "__main__":
  cli.run(main)
