//===- Dataset.h - the .bin dataset format and the data loader --*- C++ -*-===//
//
// A dataset is one `.bin` file (format in runtime/README.md, "Datasets"):
// either records with named fields (digits: `x` f32[64], `y` i32[]) or one
// token stream (text: u8 bytes). Fields bind to the model's inputs by name;
// a token stream feeds the inputs `tokens` and `targets` with windows of
// seq + 1 tokens shifted by one.
//
// The last 10% of the records (or of the stream) is held out for evaluation
// and never trained on. Training order is a pure function of (seed, epoch)
// for records (Philox Fisher-Yates) and of (seed, batch index) for streams
// (Philox window starts), so a run is reproducible and a saved DataCursor
// resumes it exactly.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_DATASET_H
#define LOOM_RUNTIME_DATASET_H

#include "runtime/Artifact.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace loom::runtime {

constexpr uint32_t kDatasetVersion = 1;
constexpr size_t kDatasetHeaderBytes = 32;
constexpr size_t kFieldDescriptorBytes = 80;
constexpr size_t kMaxFieldName = 31;
constexpr size_t kMaxFieldRank = 4;
constexpr uint32_t kMaxFields = 64;
/// Every field's data starts at a multiple of this.
constexpr uint64_t kDataAlignment = 64;

enum class DataKind : uint32_t { Records = 1, Tokens = 2 };

/// Element types a dataset field can have (file codes in runtime/README.md).
enum class DataType : uint32_t {
  F32 = 1,
  F64 = 2,
  I32 = 3,
  I64 = 4,
  U8 = 5,
  U16 = 6,
  I8 = 7
};
const char *dataTypeName(DataType t);
size_t dataTypeSize(DataType t);
bool isKnownDataType(uint32_t code);

struct DataField {
  std::string name;
  DataType dtype = DataType::F32;
  std::vector<int64_t> shape; ///< of one record
  uint64_t offset = 0;        ///< of the field's data in the file
  int64_t recordElements = 1;
  uint64_t recordBytes = 0;
};

/// An opened, validated dataset file (memory-mapped).
class Dataset {
public:
  /// Opens and validates `path`. Throws Error "PATH: cause".
  static std::unique_ptr<Dataset> open(const std::string &path);
  /// Validates an in-memory image (tests); `name` stands for the path.
  static std::unique_ptr<Dataset> fromBytes(const std::string &name,
                                            std::vector<unsigned char> bytes);
  ~Dataset();
  Dataset(const Dataset &) = delete;
  Dataset &operator=(const Dataset &) = delete;

  const std::string &path() const { return path_; }
  DataKind kind() const { return kind_; }
  /// Records, or tokens in the stream.
  int64_t count() const { return count_; }
  /// Token streams: the vocabulary size in the header (0: not given).
  uint32_t vocab() const { return vocab_; }
  const std::vector<DataField> &fields() const { return fields_; }
  const DataField *field(const std::string &name) const;
  const unsigned char *data(const DataField &f) const {
    return data_ + f.offset;
  }
  /// A hash of the header and field table: identifies the dataset in a
  /// saved cursor.
  uint64_t fingerprint() const { return fingerprint_; }
  /// "records: 1797 × {x f32[64], y i32[]}" / "token stream: 1234567 u8 tokens,
  /// vocab 256".
  std::string summary() const;

private:
  Dataset() = default;
  void validate();

  std::string path_;
  const unsigned char *data_ = nullptr;
  size_t size_ = 0;
  std::vector<unsigned char> owned_;
  void *mapping_ = nullptr;
  DataKind kind_ = DataKind::Records;
  int64_t count_ = 0;
  uint32_t vocab_ = 0;
  std::vector<DataField> fields_;
  uint64_t fingerprint_ = 0;
};

/// One field to write (tests and tools): `bytes` holds count records.
struct FieldContents {
  std::string name;
  DataType dtype;
  std::vector<int64_t> shape; ///< per record
  std::vector<unsigned char> bytes;
};
/// Encodes a dataset file. For a token stream pass one field "tokens" of
/// rank 0 and `count` = number of tokens.
std::vector<unsigned char>
encodeDataset(DataKind kind, int64_t count,
              const std::vector<FieldContents> &fields, uint32_t vocab = 0);

/// Where a run is in its data: enough to resume it exactly.
struct DataCursor {
  uint64_t seed = 0;
  uint64_t fingerprint = 0; ///< Dataset::fingerprint() it belongs to
  uint64_t epoch = 0;       ///< records: the current epoch
  uint64_t batch = 0;       ///< records: next batch within the epoch;
                            ///< streams: batches drawn so far
  json::Value toJson() const;
  /// Throws Error on a malformed object.
  static DataCursor fromJson(const json::Value &v);
};

/// Binds a dataset to a model's inputs and cuts batches into the arena.
class DataLoader {
public:
  /// Throws Error "PATH: cause" when the dataset does not fit the inputs, or
  /// has less than one training batch.
  DataLoader(const Dataset &data, const std::vector<Buffer> &inputs,
             uint64_t seed);

  int64_t batchSize() const { return batch_; }
  /// Sequence length (token streams; records with a `tokens` input), else 0.
  int64_t seqLength() const { return seq_; }
  /// Tokens in one batch: batch * seq for sequence inputs, batch otherwise.
  int64_t tokensPerBatch() const { return seq_ > 0 ? batch_ * seq_ : batch_; }

  /// Records (or stream tokens) used for training / held out.
  int64_t trainSize() const { return trainSize_; }
  int64_t heldOutSize() const { return heldOut_; }
  /// Training batches per epoch (records; 0 for streams, which have none).
  int64_t batchesPerEpoch() const;
  /// Full evaluation batches over the held-out split (the remainder dropped).
  int64_t evalBatches() const;

  /// Writes the next training batch into the inputs in `arena` and advances.
  void nextTrainBatch(unsigned char *arena);
  /// Writes held-out batch `i` (0 <= i < evalBatches()) into `arena`.
  void evalBatch(int64_t i, unsigned char *arena) const;

  DataCursor cursor() const;
  /// Throws Error when the cursor belongs to another dataset or seed.
  void restore(const DataCursor &c);

  /// Records: the training order of `epoch` (a permutation of
  /// [0, trainSize())).
  std::vector<int64_t> trainOrder(uint64_t epoch) const;
  /// Records: the record indices of held-out batch i.
  std::vector<int64_t> evalRecords(int64_t i) const;
  /// Streams: the first token of row `row` of training batch `batchIndex`.
  int64_t windowStart(uint64_t batchIndex, int64_t row) const;

private:
  struct Binding {
    const Buffer *input;
    const DataField *field;
  };
  void copyRecords(const std::vector<int64_t> &records,
                   unsigned char *arena) const;
  void copyWindows(const std::vector<int64_t> &starts,
                   unsigned char *arena) const;
  const std::vector<int64_t> &orderOf(uint64_t epoch);

  const Dataset &data_;
  uint64_t seed_;
  int64_t batch_ = 0, seq_ = 0;
  int64_t trainSize_ = 0, heldOut_ = 0;
  std::vector<Binding> bindings_;
  const Buffer *tokensInput_ = nullptr, *targetsInput_ = nullptr;
  uint64_t epoch_ = 0, next_ = 0;
  uint64_t cachedEpoch_ = UINT64_MAX;
  std::vector<int64_t> order_;
};

} // namespace loom::runtime

#endif // LOOM_RUNTIME_DATASET_H
