// Every layer type, one line each: CNNKIT_LAYER(Name) declares `LayerSchema schema_Name()`,
// which the layer's own source file defines. nn/schema.cpp builds the registry from this list.
CNNKIT_LAYER(Conv2d)
CNNKIT_LAYER(MaxPool2d)
CNNKIT_LAYER(AvgPool2d)
CNNKIT_LAYER(ReLU)
CNNKIT_LAYER(LeakyReLU)
CNNKIT_LAYER(Sigmoid)
CNNKIT_LAYER(Tanh)
CNNKIT_LAYER(Linear)
CNNKIT_LAYER(Flatten)
CNNKIT_LAYER(Dropout)
CNNKIT_LAYER(BatchNorm2d)
