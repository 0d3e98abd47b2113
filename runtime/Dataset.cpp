//===- Dataset.cpp - the .bin dataset format and the data loader ----------===//
#include "runtime/Dataset.h"
#include "runtime/Support.h"

#include "runtime/Hash.h"
#include "runtime/Random.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <set>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace loom::runtime {

static const unsigned char kDataMagic[8] = {'L', 'O', 'O', 'M',
                                            'D', 'A', 'T', 'A'};

const char *dataTypeName(DataType t) {
  switch (t) {
  case DataType::F32:
    return "f32";
  case DataType::F64:
    return "f64";
  case DataType::I32:
    return "i32";
  case DataType::I64:
    return "i64";
  case DataType::U8:
    return "u8";
  case DataType::U16:
    return "u16";
  case DataType::I8:
    return "i8";
  }
  return "?";
}

size_t dataTypeSize(DataType t) {
  switch (t) {
  case DataType::F32:
    return 4;
  case DataType::F64:
    return 8;
  case DataType::I32:
    return 4;
  case DataType::I64:
    return 8;
  case DataType::U8:
    return 1;
  case DataType::U16:
    return 2;
  case DataType::I8:
    return 1;
  }
  return 0;
}

bool isKnownDataType(uint32_t code) { return code >= 1 && code <= 7; }

static std::string fieldType(DataType t, const std::vector<int64_t> &shape) {
  std::string s = dataTypeName(t);
  s += '[';
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ']';
}


//===----------------------------------------------------------------------===//
// Dataset
//===----------------------------------------------------------------------===//

std::unique_ptr<Dataset> Dataset::open(const std::string &path) {
  std::unique_ptr<Dataset> d(new Dataset());
  d->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw Error(path + ": cannot open the dataset: " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  d->size_ = static_cast<size_t>(st.st_size);
  if (d->size_ > 0) {
    void *p = mmap(nullptr, d->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw Error(path + ": cannot map the dataset: " + std::strerror(err));
    }
    d->mapping_ = p;
    d->data_ = static_cast<const unsigned char *>(p);
  }
  ::close(fd);
  d->validate();
  return d;
}

std::unique_ptr<Dataset> Dataset::fromBytes(const std::string &name,
                                            std::vector<unsigned char> bytes) {
  std::unique_ptr<Dataset> d(new Dataset());
  d->path_ = name;
  d->owned_ = std::move(bytes);
  d->data_ = d->owned_.data();
  d->size_ = d->owned_.size();
  d->validate();
  return d;
}

Dataset::~Dataset() {
  if (mapping_)
    munmap(mapping_, size_);
}

const DataField *Dataset::field(const std::string &name) const {
  for (const auto &f : fields_)
    if (f.name == name)
      return &f;
  return nullptr;
}

void Dataset::validate() {
  auto fail = [&](const std::string &cause) -> Error {
    return Error(path_ + ": " + cause);
  };
  if (size_ < kDatasetHeaderBytes)
    throw fail("file is " + std::to_string(size_) +
               " bytes, shorter than the " +
               std::to_string(kDatasetHeaderBytes) +
               "-byte header: not a Loom dataset");
  if (std::memcmp(data_, kDataMagic, 8) != 0)
    throw fail("not a Loom dataset (no LOOMDATA magic); "
               "samples/prepare_data.py shows how to write one");
  uint32_t version = readU32(data_ + 8);
  if (version != kDatasetVersion)
    throw fail("dataset format version " + std::to_string(version) +
               ", this runtime reads " + std::to_string(kDatasetVersion));
  uint32_t kind = readU32(data_ + 12);
  if (kind != uint32_t(DataKind::Records) && kind != uint32_t(DataKind::Tokens))
    throw fail("unknown dataset kind " + std::to_string(kind) +
               " (1 = records, 2 = token stream)");
  kind_ = static_cast<DataKind>(kind);
  uint64_t count = readU64(data_ + 16);
  if (count > (uint64_t(1) << 48))
    throw fail("record/token count " + std::to_string(count) +
               " is implausible");
  count_ = static_cast<int64_t>(count);
  uint32_t nfields = readU32(data_ + 24);
  vocab_ = readU32(data_ + 28);
  if (kind_ == DataKind::Tokens && nfields != 1)
    throw fail("a token stream has exactly one field, found " +
               std::to_string(nfields));
  if (nfields == 0 || nfields > kMaxFields)
    throw fail("field count " + std::to_string(nfields) + " outside [1, " +
               std::to_string(kMaxFields) + "]");
  if (kind_ == DataKind::Records && vocab_ != 0)
    throw fail("header vocab must be 0 for records, found " +
               std::to_string(vocab_));
  uint64_t tableEnd =
      kDatasetHeaderBytes + uint64_t(nfields) * kFieldDescriptorBytes;
  if (tableEnd > size_)
    throw fail("file is " + std::to_string(size_) + " bytes, too short for " +
               std::to_string(nfields) + " field descriptors (truncated?)");
  fingerprint_ = fnv1a64(data_, tableEnd);

  std::set<std::string> names;
  struct Region {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Region> regions;
  for (uint32_t i = 0; i < nfields; ++i) {
    const unsigned char *d =
        data_ + kDatasetHeaderBytes + i * kFieldDescriptorBytes;
    std::string where = "field " + std::to_string(i);
    const char *rawName = reinterpret_cast<const char *>(d);
    size_t len = strnlen(rawName, 32);
    if (len == 0 || len > kMaxFieldName)
      throw fail(where +
                 ": name is empty or not NUL-terminated within 32 bytes");
    DataField f;
    f.name.assign(rawName, len);
    for (char c : f.name)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
            c == '.'))
        throw fail(where + ": name has a character outside [A-Za-z0-9_.]");
    for (size_t k = len; k < 32; ++k)
      if (d[k] != 0)
        throw fail(where + " ('" + f.name + "'): name padding is not zero");
    where = "field '" + f.name + "'";
    if (!names.insert(f.name).second)
      throw fail(where + " appears twice");
    uint32_t code = readU32(d + 32);
    if (!isKnownDataType(code))
      throw fail(where + ": unknown dtype code " + std::to_string(code));
    f.dtype = static_cast<DataType>(code);
    uint32_t rank = readU32(d + 36);
    if (rank > kMaxFieldRank)
      throw fail(where + ": rank " + std::to_string(rank) + " exceeds " +
                 std::to_string(kMaxFieldRank));
    f.recordElements = 1;
    for (uint32_t k = 0; k < kMaxFieldRank; ++k) {
      uint64_t dim = readU64(d + 40 + 8 * k);
      if (k >= rank) {
        if (dim != 0)
          throw fail(where + ": dims beyond its rank must be 0");
        continue;
      }
      if (dim == 0 || dim > (uint64_t(1) << 32))
        throw fail(where + ": dimension " + std::to_string(k) + " is " +
                   std::to_string(dim));
      f.shape.push_back(static_cast<int64_t>(dim));
      f.recordElements *= static_cast<int64_t>(dim);
      if (f.recordElements > (int64_t(1) << 40))
        throw fail(where + ": records too large");
    }
    f.recordBytes = uint64_t(f.recordElements) * dataTypeSize(f.dtype);
    f.offset = readU64(d + 72);
    if (f.offset % kDataAlignment != 0)
      throw fail(where + ": data offset " + std::to_string(f.offset) +
                 " is not a multiple of " + std::to_string(kDataAlignment));
    if (f.offset < tableEnd)
      throw fail(where + ": data offset " + std::to_string(f.offset) +
                 " lies inside the header");
    if (kind_ == DataKind::Tokens) {
      if (f.name != "tokens" || rank != 0)
        throw fail("a token stream's field is 'tokens' of rank 0, found " +
                   fieldType(f.dtype, f.shape) + " '" + f.name + "'");
      if (f.dtype != DataType::U8 && f.dtype != DataType::U16 &&
          f.dtype != DataType::I32)
        throw fail(std::string("token stream dtype ") + dataTypeName(f.dtype) +
                   ", expected u8, u16 or i32");
    }
    // count * recordBytes, checked against the file without overflow.
    uint64_t avail = f.offset <= size_ ? size_ - f.offset : 0;
    if (f.recordBytes != 0 && count > avail / f.recordBytes)
      throw fail(where + ": " + std::to_string(count) + " records of " +
                 std::to_string(f.recordBytes) + " bytes from offset " +
                 std::to_string(f.offset) + " run past the end of the file (" +
                 std::to_string(size_) + " bytes): truncated?");
    regions.push_back({f.offset, f.offset + count * f.recordBytes, f.name});
    fields_.push_back(std::move(f));
  }
  std::sort(regions.begin(), regions.end(),
            [](const Region &a, const Region &b) { return a.begin < b.begin; });
  for (size_t i = 1; i < regions.size(); ++i)
    if (regions[i - 1].end > regions[i].begin)
      throw fail("fields '" + regions[i - 1].name + "' and '" +
                 regions[i].name + "' overlap");
  uint64_t end = regions.empty() ? tableEnd : regions.back().end;
  if (end != size_)
    throw fail("file is " + std::to_string(size_) +
               " bytes, its fields end at " + std::to_string(end) +
               " (trailing bytes or a wrong count)");

  if (kind_ == DataKind::Tokens) {
    const DataField &f = fields_[0];
    if (count_ < 2)
      throw fail("a token stream needs at least 2 tokens, found " +
                 std::to_string(count_));
    // Tokens become embedding ids: check them once here rather than fail
    // mid-run inside a kernel.
    const unsigned char *p = data_ + f.offset;
    for (int64_t i = 0; i < count_; ++i) {
      int64_t t;
      if (f.dtype == DataType::U8) {
        t = p[i];
      } else if (f.dtype == DataType::U16) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        t = v;
      } else {
        int32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        t = v;
      }
      if (t < 0 || (vocab_ != 0 && t >= int64_t(vocab_)))
        throw fail("token " + std::to_string(i) + " is " + std::to_string(t) +
                   ", outside [0, " +
                   (vocab_ ? std::to_string(vocab_) : std::string("2^31")) +
                   ")");
    }
  }
}

std::string Dataset::summary() const {
  if (kind_ == DataKind::Tokens)
    return "token stream: " + formatCount(count_) + " " +
           dataTypeName(fields_[0].dtype) + " tokens" +
           (vocab_ ? ", vocab " + std::to_string(vocab_) : std::string());
  std::string s = "records: " + formatCount(count_) + " × {";
  for (size_t i = 0; i < fields_.size(); ++i)
    s += (i ? ", " : "") + fields_[i].name + " " +
         fieldType(fields_[i].dtype, fields_[i].shape);
  return s + "}";
}

std::vector<unsigned char>
encodeDataset(DataKind kind, int64_t count,
              const std::vector<FieldContents> &fields, uint32_t vocab) {
  uint64_t tableEnd =
      kDatasetHeaderBytes + fields.size() * kFieldDescriptorBytes;
  auto align = [](uint64_t v) {
    return (v + kDataAlignment - 1) / kDataAlignment * kDataAlignment;
  };
  std::vector<uint64_t> offsets;
  uint64_t at = align(tableEnd);
  for (const auto &f : fields) {
    offsets.push_back(at);
    at = align(at + f.bytes.size());
  }
  // The file ends where the last field's data ends (no padding after it).
  uint64_t size =
      fields.empty() ? tableEnd : offsets.back() + fields.back().bytes.size();
  std::vector<unsigned char> out(size, 0);
  std::memcpy(out.data(), kDataMagic, 8);
  putU32(out.data() + 8, kDatasetVersion);
  putU32(out.data() + 12, static_cast<uint32_t>(kind));
  putU64(out.data() + 16, static_cast<uint64_t>(count));
  putU32(out.data() + 24, static_cast<uint32_t>(fields.size()));
  putU32(out.data() + 28, vocab);
  for (size_t i = 0; i < fields.size(); ++i) {
    unsigned char *d =
        out.data() + kDatasetHeaderBytes + i * kFieldDescriptorBytes;
    std::memcpy(d, fields[i].name.data(),
                std::min<size_t>(fields[i].name.size(), 31));
    putU32(d + 32, static_cast<uint32_t>(fields[i].dtype));
    putU32(d + 36, static_cast<uint32_t>(fields[i].shape.size()));
    for (size_t k = 0; k < fields[i].shape.size() && k < kMaxFieldRank; ++k)
      putU64(d + 40 + 8 * k, static_cast<uint64_t>(fields[i].shape[k]));
    putU64(d + 72, offsets[i]);
    std::memcpy(out.data() + offsets[i], fields[i].bytes.data(),
                fields[i].bytes.size());
  }
  return out;
}

//===----------------------------------------------------------------------===//
// DataCursor
//===----------------------------------------------------------------------===//

json::Value DataCursor::toJson() const {
  // u64 values as decimal strings: JSON numbers stop being exact at 2^53.
  return json::Value(
      json::Object{{"seed", json::Value(std::to_string(seed))},
                   {"fingerprint", json::Value(std::to_string(fingerprint))},
                   {"epoch", json::Value(std::to_string(epoch))},
                   {"batch", json::Value(std::to_string(batch))}});
}

DataCursor DataCursor::fromJson(const json::Value &v) {
  auto get = [&](const char *key) -> uint64_t {
    const json::Value *f = v.find(key);
    if (!f || !f->isString() || f->asString().empty() ||
        f->asString().find_first_not_of("0123456789") != std::string::npos ||
        f->asString().size() > 20)
      throw Error(std::string("data cursor: '") + key +
                  "' missing or not a decimal string");
    errno = 0;
    unsigned long long x = std::strtoull(f->asString().c_str(), nullptr, 10);
    if (errno)
      throw Error(std::string("data cursor: '") + key + "' out of range");
    return x;
  };
  DataCursor c;
  c.seed = get("seed");
  c.fingerprint = get("fingerprint");
  c.epoch = get("epoch");
  c.batch = get("batch");
  return c;
}

//===----------------------------------------------------------------------===//
// DataLoader
//===----------------------------------------------------------------------===//

namespace {
const uint64_t kShuffleStream = fnv1a64("loom.data.shuffle");
const uint64_t kWindowStream = fnv1a64("loom.data.windows");

std::string describeInputs(const std::vector<Buffer> &inputs) {
  std::string s;
  for (size_t i = 0; i < inputs.size(); ++i)
    s += (i ? ", " : "") + inputs[i].name + " " +
         formatTensorType(inputs[i].dtype, inputs[i].shape);
  return s;
}

std::string describeFields(const Dataset &d) {
  std::string s;
  for (size_t i = 0; i < d.fields().size(); ++i)
    s += (i ? ", " : "") + d.fields()[i].name + " " +
         fieldType(d.fields()[i].dtype, d.fields()[i].shape);
  return s;
}
} // namespace

DataLoader::DataLoader(const Dataset &data, const std::vector<Buffer> &inputs,
                       uint64_t seed)
    : data_(data), seed_(seed) {
  auto fail = [&](const std::string &cause) -> Error {
    return Error(data.path() + ": " + cause);
  };
  if (inputs.empty())
    throw fail("the model has no inputs to feed");
  batch_ = inputs[0].shape[0];

  if (data.kind() == DataKind::Tokens) {
    for (const auto &in : inputs) {
      if (in.name == "tokens")
        tokensInput_ = &in;
      else if (in.name == "targets")
        targetsInput_ = &in;
    }
    auto fits = [](const Buffer *b) {
      return b && b->dtype == DType::I32 && b->shape.size() == 2;
    };
    if (inputs.size() != 2 || !fits(tokensInput_) || !fits(targetsInput_) ||
        tokensInput_->shape != targetsInput_->shape)
      throw fail("a token stream feeds the inputs 'tokens' and 'targets', both "
                 "i32[batch, seq]; the model's inputs are " +
                 describeInputs(inputs));
    seq_ = tokensInput_->shape[1];
    heldOut_ = data.count() / 10;
    trainSize_ = data.count() - heldOut_;
    if (trainSize_ < seq_ + 1)
      throw fail("the training part of the stream has " +
                 std::to_string(trainSize_) +
                 " tokens, fewer than one window "
                 "of seq + 1 = " +
                 std::to_string(seq_ + 1));
    return;
  }

  for (const auto &in : inputs) {
    std::vector<int64_t> perRecord(in.shape.begin() + 1, in.shape.end());
    std::string expected = std::string(dtypeName(in.dtype)) + "[";
    for (size_t i = 0; i < perRecord.size(); ++i)
      expected += (i ? ", " : "") + std::to_string(perRecord[i]);
    expected += "]";
    const DataField *f = data.field(in.name);
    if (!f)
      throw fail("no field '" + in.name + "' for the model's input '" +
                 in.name + "' (expected " + expected +
                 " per record); the file has " + describeFields(data));
    if (std::string(dataTypeName(f->dtype)) != dtypeName(in.dtype) ||
        f->shape != perRecord)
      throw fail("field '" + in.name + "' is " + fieldType(f->dtype, f->shape) +
                 " per record, the model's input '" + in.name + "' expects " +
                 expected);
    bindings_.push_back({&in, f});
    if (in.name == "tokens" && in.shape.size() == 2)
      seq_ = in.shape[1];
  }
  heldOut_ = data.count() / 10;
  trainSize_ = data.count() - heldOut_;
  if (trainSize_ < batch_)
    throw fail("only " + std::to_string(trainSize_) +
               " training records (after holding out " +
               std::to_string(heldOut_) + "), fewer than one batch of " +
               std::to_string(batch_));
}

int64_t DataLoader::batchesPerEpoch() const {
  return data_.kind() == DataKind::Records ? trainSize_ / batch_ : 0;
}

int64_t DataLoader::evalBatches() const {
  if (data_.kind() == DataKind::Records)
    return heldOut_ / batch_;
  if (heldOut_ < seq_ + 1)
    return 0;
  int64_t windows = (heldOut_ - 1) / seq_;
  return windows / batch_;
}

std::vector<int64_t> DataLoader::trainOrder(uint64_t epoch) const {
  std::vector<int64_t> order(static_cast<size_t>(trainSize_));
  for (int64_t i = 0; i < trainSize_; ++i)
    order[i] = i;
  // Fisher-Yates from the top, each draw a pure function of (seed, epoch, i).
  for (int64_t i = trainSize_ - 1; i > 0; --i) {
    PhiloxCounter w = philoxAt(seed_, kShuffleStream, epoch, uint64_t(i));
    int64_t j = static_cast<int64_t>(uniformBelow(w[0], w[1], uint64_t(i) + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

const std::vector<int64_t> &DataLoader::orderOf(uint64_t epoch) {
  if (cachedEpoch_ != epoch) {
    order_ = trainOrder(epoch);
    cachedEpoch_ = epoch;
  }
  return order_;
}

std::vector<int64_t> DataLoader::evalRecords(int64_t i) const {
  std::vector<int64_t> r;
  for (int64_t k = 0; k < batch_; ++k)
    r.push_back(trainSize_ + i * batch_ + k);
  return r;
}

int64_t DataLoader::windowStart(uint64_t batchIndex, int64_t row) const {
  PhiloxCounter w = philoxAt(seed_, kWindowStream, 0,
                             batchIndex * uint64_t(batch_) + uint64_t(row));
  // Windows of seq + 1 tokens lie wholly in the training part.
  return static_cast<int64_t>(
      uniformBelow(w[0], w[1], uint64_t(trainSize_ - seq_)));
}

void DataLoader::copyRecords(const std::vector<int64_t> &records,
                             unsigned char *arena) const {
  for (const Binding &b : bindings_) {
    unsigned char *dst = arena + b.input->offset;
    const unsigned char *src = data_.data(*b.field);
    size_t n = b.field->recordBytes;
    for (size_t r = 0; r < records.size(); ++r)
      std::memcpy(dst + r * n, src + uint64_t(records[r]) * n, n);
  }
}

void DataLoader::copyWindows(const std::vector<int64_t> &starts,
                             unsigned char *arena) const {
  const DataField &f = data_.fields()[0];
  const unsigned char *src = data_.data(f);
  auto token = [&](int64_t i) -> int32_t {
    switch (f.dtype) {
    case DataType::U8:
      return src[i];
    case DataType::U16: {
      uint16_t v;
      std::memcpy(&v, src + 2 * i, 2);
      return v;
    }
    default: {
      int32_t v;
      std::memcpy(&v, src + 4 * i, 4);
      return v;
    }
    }
  };
  int32_t *tokens = reinterpret_cast<int32_t *>(arena + tokensInput_->offset);
  int32_t *targets = reinterpret_cast<int32_t *>(arena + targetsInput_->offset);
  for (size_t r = 0; r < starts.size(); ++r)
    for (int64_t t = 0; t < seq_; ++t) {
      tokens[r * seq_ + t] = token(starts[r] + t);
      targets[r * seq_ + t] = token(starts[r] + t + 1);
    }
}

void DataLoader::nextTrainBatch(unsigned char *arena) {
  if (data_.kind() == DataKind::Tokens) {
    std::vector<int64_t> starts;
    for (int64_t r = 0; r < batch_; ++r)
      starts.push_back(windowStart(next_, r));
    copyWindows(starts, arena);
    ++next_;
    return;
  }
  // Records: the epoch's remainder (trainSize % batch) is dropped.
  const std::vector<int64_t> &order = orderOf(epoch_);
  std::vector<int64_t> records(order.begin() + next_ * batch_,
                               order.begin() + (next_ + 1) * batch_);
  copyRecords(records, arena);
  if (++next_ == uint64_t(batchesPerEpoch())) {
    next_ = 0;
    ++epoch_;
  }
}

void DataLoader::evalBatch(int64_t i, unsigned char *arena) const {
  if (i < 0 || i >= evalBatches())
    throw Error(data_.path() + ": evaluation batch " + std::to_string(i) +
                " outside [0, " + std::to_string(evalBatches()) + ")");
  if (data_.kind() == DataKind::Tokens) {
    std::vector<int64_t> starts;
    for (int64_t r = 0; r < batch_; ++r)
      starts.push_back(trainSize_ + (i * batch_ + r) * seq_);
    copyWindows(starts, arena);
    return;
  }
  copyRecords(evalRecords(i), arena);
}

DataCursor DataLoader::cursor() const {
  DataCursor c;
  c.seed = seed_;
  c.fingerprint = data_.fingerprint();
  c.epoch = epoch_;
  c.batch = next_;
  return c;
}

void DataLoader::restore(const DataCursor &c) {
  if (c.fingerprint != data_.fingerprint())
    throw Error(data_.path() + ": the saved data cursor belongs to another "
                               "dataset (fingerprint differs)");
  if (c.seed != seed_)
    throw Error(data_.path() + ": the saved data cursor was made with seed " +
                std::to_string(c.seed) + ", this run uses " +
                std::to_string(seed_));
  if (data_.kind() == DataKind::Records &&
      c.batch >= uint64_t(batchesPerEpoch()))
    throw Error(data_.path() + ": the saved data cursor's batch " +
                std::to_string(c.batch) + " is past the epoch's " +
                std::to_string(batchesPerEpoch()) + " batches");
  if (data_.kind() == DataKind::Tokens && c.epoch != 0)
    throw Error(data_.path() + ": a token stream's cursor has epoch 0");
  epoch_ = c.epoch;
  next_ = c.batch;
}

} // namespace loom::runtime
