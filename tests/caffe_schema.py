"""A minimal caffe.proto schema built with the protobuf package, independent of ilgnet's reader.

Only the messages needed to write a caffemodel are declared, with BVLC caffe.proto's field
numbers. V1LayerParameter.type is an enum there; on the wire it is a varint, so int32 here.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.encoder import _VarintBytes

F = descriptor_pb2.FieldDescriptorProto

# V1LayerParameter.LayerType values (caffe.proto).
V1_TYPES = {"Convolution": 4, "InnerProduct": 14}


def _field(msg, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=None, packed=False):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if packed:
        f.options.packed = True
    return f


def _build():
    fdp = descriptor_pb2.FileDescriptorProto(name="ilgnet_test_caffe.proto", package="caffe", syntax="proto2")
    shape = fdp.message_type.add(name="BlobShape")
    _field(shape, "dim", 1, F.TYPE_INT64, F.LABEL_REPEATED, packed=True)
    blob = fdp.message_type.add(name="BlobProto")
    for i, n in enumerate(("num", "channels", "height", "width"), start=1):
        _field(blob, n, i, F.TYPE_INT32)
    _field(blob, "data", 5, F.TYPE_FLOAT, F.LABEL_REPEATED, packed=True)
    _field(blob, "shape", 7, F.TYPE_MESSAGE, type_name=".caffe.BlobShape")
    _field(blob, "double_data", 8, F.TYPE_DOUBLE, F.LABEL_REPEATED, packed=True)
    # The same message with unpacked floats (what very old writers produced).
    ublob = fdp.message_type.add(name="UnpackedBlobProto")
    for i, n in enumerate(("num", "channels", "height", "width"), start=1):
        _field(ublob, n, i, F.TYPE_INT32)
    _field(ublob, "data", 5, F.TYPE_FLOAT, F.LABEL_REPEATED)
    layer = fdp.message_type.add(name="LayerParameter")
    _field(layer, "name", 1, F.TYPE_STRING)
    _field(layer, "type", 2, F.TYPE_STRING)
    _field(layer, "bottom", 3, F.TYPE_STRING, F.LABEL_REPEATED)
    _field(layer, "top", 4, F.TYPE_STRING, F.LABEL_REPEATED)
    _field(layer, "blobs", 7, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".caffe.BlobProto")
    v1 = fdp.message_type.add(name="V1LayerParameter")
    _field(v1, "bottom", 2, F.TYPE_STRING, F.LABEL_REPEATED)
    _field(v1, "top", 3, F.TYPE_STRING, F.LABEL_REPEATED)
    _field(v1, "name", 4, F.TYPE_STRING)
    _field(v1, "type", 5, F.TYPE_INT32)
    _field(v1, "blobs", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".caffe.BlobProto")
    v1u = fdp.message_type.add(name="V1LayerParameterUnpacked")
    _field(v1u, "name", 4, F.TYPE_STRING)
    _field(v1u, "type", 5, F.TYPE_INT32)
    _field(v1u, "blobs", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".caffe.UnpackedBlobProto")
    net = fdp.message_type.add(name="NetParameter")
    _field(net, "name", 1, F.TYPE_STRING)
    _field(net, "layers", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".caffe.V1LayerParameter")
    _field(net, "layer", 100, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".caffe.LayerParameter")
    netu = fdp.message_type.add(name="NetParameterUnpacked")
    _field(netu, "layers", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".caffe.V1LayerParameterUnpacked")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return {m.name: get(pool.FindMessageTypeByName(f"caffe.{m.name}")) for m in fdp.message_type}


MESSAGES = _build()
NetParameter = MESSAGES["NetParameter"]
NetParameterUnpacked = MESSAGES["NetParameterUnpacked"]


def write_caffemodel(path, layers, *, v1=False, unpacked=False, double=False, name="test"):
    """Write ``layers`` = [(name, type, [array, ...])] as a caffemodel.

    V2 blobs carry ``shape``; V1 blobs carry legacy num/channels/height/width (4-D, leading 1s),
    as the authors' Caffe wrote them.
    """
    net = NetParameterUnpacked() if unpacked else NetParameter(name=name)
    for lname, ltype, arrays in layers:
        if v1 or unpacked:
            msg = net.layers.add(name=lname, type=V1_TYPES[ltype])
        else:
            msg = net.layer.add(name=lname, type=ltype)
        for arr in arrays:
            b = msg.blobs.add()
            if v1 or unpacked:
                dims = (1,) * (4 - arr.ndim) + tuple(arr.shape)
                b.num, b.channels, b.height, b.width = dims
            else:
                b.shape.dim.extend(arr.shape)
            flat = arr.reshape(-1)
            if double:
                b.double_data.extend(flat.astype("float64").tolist())
            elif unpacked:
                b.data.extend(flat.astype("float32").tolist())
            else:
                # Let protobuf parse the packed encoding of the floats: the same bytes that
                # data.extend() produces, 30x faster for the 150M weights of ILGNet.
                payload = flat.astype("<f4").tobytes()
                b.MergeFromString(b"\x2a" + _VarintBytes(len(payload)) + payload)
    with open(path, "wb") as fh:
        fh.write(net.SerializeToString())
