"""Trains the model a config describes, resuming from the latest good checkpoint in --workdir.

    python train.py [--config configs/x.py] [--workdir DIR] [--config.train.num_steps=...]
    python train.py --dry_run [--config.mesh.data=64]   # compile for the mesh, print memory and FLOPs
    python train.py --dry_run --topology v5e:2x2 [--json]  # compile for a TPU slice here, without the data

Exit status: 0 done, 2 a user error (one line on stderr), 3 pre-empted (resume with the same command).
"""
import json

from absl import app, flags

from bilateral_jax import cli, console, experiments, parallel, trainer

flags.DEFINE_bool("fresh_optimizer", False, "Resume the checkpoint's parameters with a new optimiser state "
                  "(after changing an optimizer option that changes its structure, e.g. clip_norm 0 <-> > 0).")
flags.DEFINE_bool("dry_run", False, "Compile the train step for the configured mesh from the config alone (no "
                  "data is built or read) and print parameters, memory and FLOPs, then exit. With mesh.data set (not -1) it compiles on data x fsdp CPU "
                  "devices, so a pod's mesh can be checked on any machine (memory is then the CPU compiler's).")
flags.DEFINE_string("topology", None, "With --dry_run: compile the train and eval steps for this TPU slice (as "
                    "jax.experimental.topologies names it: v5e:2x2, v4:2x2x2, v5p:2x2x1) on this host through libtpu, "
                    "from the config alone (no dataset), and print the memory per chip against its capacity.")
flags.DEFINE_bool("json", False, "With --topology: print the report as one JSON object.")
flags.adopt_module_key_flags(cli)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, topology = cli.FLAGS.config, cli.FLAGS.topology
  if topology and not cli.FLAGS.dry_run:
    raise app.UsageError("--topology compiles for a TPU slice: it needs --dry_run")
  if topology:
    cli.set_up(cpu_only=True)  # the slice is compiled for through libtpu; nothing runs here
    report = experiments.compile_for_slice(config, topology)
    print(json.dumps(report) if cli.FLAGS.json else console.slice_summary(report))
    return
  host_devices = parallel.devices_for_dry_run(config.mesh.data, config.mesh.fsdp) if cli.FLAGS.dry_run else 0
  workdir = cli.set_up(host_devices)
  if cli.FLAGS.dry_run:
    trainer.compile_only(config, workdir)
    return
  final = trainer.train_and_evaluate(config, workdir, fresh_optimizer=cli.FLAGS.fresh_optimizer)
  for split, metrics in final.items():
    print(f"{split}: " + "  ".join(f"{k} {cli.number(v)}" for k, v in metrics.items()))


if __name__ == "__main__":
  cli.run(main)
