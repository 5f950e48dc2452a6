"""The network and its weights: ILGNet after deploy.prototxt, the authors' preprocessing, the Caffe
importer, the weights store, and the precision it runs in.
"""
