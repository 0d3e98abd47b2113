//===- TrainDialect.td - the train dialect ------------------*- tablegen -*-===//
//
// The training step: forward (loom ops), backward (the VJP ops below),
// gradient post-processing and the optimizer update, with every piece of
// state — parameters, optimizer moments, counters — read and written by name,
// so that the step is a pure function of (state, batch).
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_DIALECTS_TRAIN_TRAINDIALECT_TD
#define LOOM_DIALECTS_TRAIN_TRAINDIALECT_TD

include "mlir/IR/OpBase.td"

def Train_Dialect : Dialect {
  let name = "train";
  let cppNamespace = "::loom::train";
  let summary = "The training step of the Loom compiler";
  let description = [{
    A `train.step` holds one program: the training step (forward, loss,
    backward, optimizer update) or the evaluation step (forward, loss and
    accuracy statistics). State is explicit: `train.param`/`train.state` read
    a named persistent tensor, `train.update` writes it, `train.input` reads
    the batch and `train.output` publishes a scalar metric. Forward ops that
    must save values for the backward pass (`train.layer_norm`, ...) and the
    backward ops (`*_grad`) live here; elementwise math stays in `loom`.
  }];
}

class Train_Op<string mnemonic, list<Trait> traits = []>
    : Op<Train_Dialect, mnemonic, traits>;

defvar Train_AnyTensor = AnyStaticShapeTensor;
def Train_Scalar : 0DTensorOf<[F32]>;
def Train_Counter : 0DTensorOf<[I64]>;

#endif // LOOM_DIALECTS_TRAIN_TRAINDIALECT_TD
