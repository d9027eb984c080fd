module nexusquant

go 1.19
