"""The hooks a `Trainer` subclass may override: four, called by the loop in order
`on_train_start`, (`on_step_end`, `on_eval_end`)*, `on_train_end`. Any hook may set
`self.should_stop = True` to end training after the current step (a checkpoint is
saved)."""


class Hooks:
    def on_train_start(self, state) -> None:
        """Called once before the first step (after a resume: before the first new
        step), with the `TrainState`.

        **Example override:**

            def on_train_start(self, state):
                n = sum(x.size for x in jax.tree.leaves(eqx.filter(
                    state.model, eqx.is_array)))
                print(f"{n} parameters, starting at step {int(state.step)}")
        """

    def on_step_end(self, step: int, metrics: dict) -> None:
        """Called after every optimizer step (`step` counts from 1) with that step's
        metrics as *device* arrays: reading a value (`float(...)`) waits for the
        device, so do it only now and then.

        **Example override:**

            def on_step_end(self, step, metrics):
                if step % 1000 == 0 and float(metrics["loss"]) < 1e-5:
                    self.should_stop = True
        """

    def on_eval_end(self, step: int, metrics: dict[str, float]) -> None:
        """Called after each evaluation with the logged validation metrics (host
        floats, e.g. `metrics["val/loss"]`).

        **Example override:**

            def on_eval_end(self, step, metrics):
                self.best = min(getattr(self, "best", float("inf")),
                                metrics["val/loss"])
        """

    def on_train_end(self, state) -> None:
        """Called once after the last step (also after early stopping) with the
        final `TrainState`, after the last checkpoint was written.

        **Example override:**

            def on_train_end(self, state):
                eqx.tree_serialise_leaves(self.run_dir / "model.eqx", state.model)
        """
