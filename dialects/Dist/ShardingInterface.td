//===- ShardingInterface.td - how an op computes on sharded values --------===//

#ifndef LOOM_DIALECTS_DIST_SHARDINGINTERFACE_TD
#define LOOM_DIALECTS_DIST_SHARDINGINTERFACE_TD

include "mlir/IR/OpBase.td"

def ShardingRuleOpInterface : OpInterface<"ShardingRuleOpInterface"> {
  let cppNamespace = "::loom::dist";
  let description = [{
    An op's sharding rule (dialects/Dist/Sharding.h): given the shardings its
    operands have, the shardings it needs them in, the shardings of its
    results and the reason. loom-propagate-sharding asks every op; an op
    without this interface computes on whole values.
  }];
  let methods = [
    InterfaceMethod<
      "The op's rule for these operand shardings (a diagnostic on failure)",
      "::mlir::FailureOr<::loom::sharding::Rule>", "getShardingRule",
      (ins "::llvm::ArrayRef<::loom::sharding::Sharding>":$operands,
           "const ::loom::sharding::RuleContext &":$ctx)>,
  ];
}

#endif // LOOM_DIALECTS_DIST_SHARDINGINTERFACE_TD
