using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"; PyTorch's reentrant
/// <c>torch.utils.checkpoint</c>): the forward of a block runs without recording its graph and keeps only its inputs; the
/// backward runs the block again with gradients on, back-propagates the incoming gradient through it (which adds the
/// block's parameter gradients to their <c>.grad</c>) and hands the input's gradient on. TorchSharp 0.107 has no
/// <c>torch.utils.checkpoint</c>, so this is a custom autograd function (<c>torch.autograd.SingleTensorFunction</c>).
/// The default CPU generator's state is saved at the forward and restored for the recomputation, so dropout draws the
/// same masks and the gradients equal the plain ones.
/// </summary>
public static class Checkpoint
{
    /// <summary>
    /// y = f(inputs) with f's activations recomputed in the backward. inputs[0] is the differentiable input (the hidden
    /// states); further inputs (RoPE tables, masks) are constants that f reads, kept alive for the recomputation.
    /// f must be a pure function of its inputs and of parameters that live as long as the graph.
    /// </summary>
    public static Tensor Run(Func<Tensor[], Tensor> f, params Tensor[] inputs)
    {
        if (inputs.Length == 0) throw new ArgumentException("Checkpoint.Run needs at least the input tensor.");
        // Under LoRA the frozen embedding's output needs no gradient, and a function none of whose inputs does is left out
        // of the graph (the parameters inside f are invisible to it): give the input a gradient to hand back, as PyTorch's
        // enable_input_require_grads does for the same reason.
        if (torch.is_grad_enabled() && !inputs[0].requires_grad) inputs = [inputs[0].detach().requires_grad_(true), .. inputs.Skip(1)];
        return Recompute.apply([f, .. inputs]);
    }

    sealed class Recompute : autograd.SingleTensorFunction<Recompute>
    {
        public override string Name => "Checkpoint";

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var f = (Func<Tensor[], Tensor>)vars[0];
            var inputs = vars.Skip(1).Cast<Tensor>().ToArray();
            ctx.save_data("f", f);
            ctx.save_data("n", inputs.Length);
            using (var state = torch.get_rng_state()) ctx.save_data("rng", state.data<byte>().ToArray());
            ctx.save_for_backward([.. inputs]);
            return f(inputs);   // apply runs this with gradients off: no graph, no saved activations
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var f = (Func<Tensor[], Tensor>)ctx.get_data("f");
            var saved = ctx.get_saved_variables();
            var rng = (byte[])ctx.get_data("rng");
            using var now = torch.get_rng_state();
            using (var state = torch.tensor(rng)) torch.set_rng_state(state);
            Tensor? gradInput;
            try
            {
                using var scope = torch.NewDisposeScope();
                using var grad = torch.enable_grad();
                var x = saved[0].detach().requires_grad_(saved[0].requires_grad);
                var y = f([x, .. saved.Skip(1)]);
                y.backward([gradOutput]);
                gradInput = x.grad is { } g ? scope.MoveToOuter(g.clone()) : null;
            }
            finally
            {
                torch.set_rng_state(now);
            }
            // One gradient per argument of apply: none for f, the input's, none for the constants.
            var result = new List<Tensor> { null!, gradInput! };
            for (int i = 1; i < saved.Count; i++) result.Add(null!);
            return result;
        }
    }
}
